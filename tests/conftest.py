import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="run heavy checks (marked slow) in their small form, as CI does")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy check; with --quick it runs in a small form")
