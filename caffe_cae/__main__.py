"""``python -m caffe_cae`` is the ``caffe-cae`` command."""
import sys

from .cli import main

sys.exit(main())
