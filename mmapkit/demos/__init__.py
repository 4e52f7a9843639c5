"""Acts of ``mmapkit demo``: each module ``NN_name.py`` defines ``TITLE`` and
``run(workdir: pathlib.Path, say: Callable[[str], None]) -> None``.

An act does the real thing (real processes, real files under ``workdir``) and says what
happened; it raises if what it shows did not happen, so a broken demo fails loudly.
Acts run in the order of their file names.
"""
