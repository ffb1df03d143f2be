"""caffe-cae: the convolutional auto-encoders of Turchenko, Chalmers & Luczak (2019) in Caffe.

This package is imported both on the host and inside the Caffe engine (Python 3.9,
Debian's older protobuf), so this file imports nothing.
"""
import os

__version__ = "0.1.0"

#: The package directory. Its ``templates/`` and ``docker/`` (the engine recipe) are the
#: repository's top-level ``templates/`` and ``docker/`` (symbolic links in a checkout,
#: copies in a wheel), so files the package reads are found under it in both installs.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _checkout_root(parent):
    return parent if (os.path.isfile(os.path.join(parent, "setup.cfg"))
                      and os.path.isdir(os.path.join(parent, "templates"))) else None


#: The repository root when the package runs from a checkout (editable install, PYTHONPATH),
#: where generated/, data/ and .git live; None when it is installed from a wheel.
REPO_ROOT = _checkout_root(os.path.dirname(PACKAGE_DIR))


def package_path(*parts):
    """A file shipped with the package (templates/, docker/, proto/, paper.json), either install."""
    return os.path.join(PACKAGE_DIR, *parts)
