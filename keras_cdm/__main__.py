import sys

from keras_cdm.cli import main

sys.exit(main())
