"""A stand-in for Django in an offline machine: just enough to serve one page.

`python -m django runserver 0.0.0.0:8080 --text "Hello, lama"` answers every GET with the
text. (The original exercise installed the real Django from PyPI; machines here have no
outbound network.)"""

VERSION = (0, 0, 1, "lite")
