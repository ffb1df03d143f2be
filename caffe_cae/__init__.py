"""caffe-cae: the convolutional auto-encoders of Turchenko, Chalmers & Luczak (2019) in Caffe.

This package is imported both on the host and inside the Caffe engine (Python 3.9,
Debian's older protobuf), so this file imports nothing.
"""
import os

__version__ = "0.1.0"

#: The repository root (parent of the package); templates/ and generated/ live there.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
