"""The modes of launch.py, each a function of (config, workdir, ...)."""
