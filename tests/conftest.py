"""Suite-wide settings: no test may reach the network, and pydicom never downloads test data."""

import os

os.environ.setdefault("PYDICOM_DATA_NO_DOWNLOAD", "1")
