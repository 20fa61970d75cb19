import torch


def pytest_configure(config):
    # the figures in the notes are for 2 threads (this project's CI machine); set explicitly
    torch.set_num_threads(2)
