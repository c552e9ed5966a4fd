"""ssl_jax: self-supervised visual representation learning in JAX/Flax."""
import setuptools

setuptools.setup(
    name='ssl_jax',
    version='0.1.0',
    description='Pretext-task self-supervised learning (rotation, jigsaw, relative patch '
                'location, ...) and linear evaluation of every layer, in JAX/Flax.',
    packages=setuptools.find_packages(include=['ssl_jax', 'ssl_jax.*',
                                               'input_pipeline', 'input_pipeline.*']),
    package_data={'ssl_jax': ['tasks/data/*.json']},
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.6,<0.13',
        'flax>=0.10.6,<0.14',
        'optax>=0.2.4,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'tensorflow-cpu>=2.16,<2.22',
        'tensorboard>=2.16,<2.22',
        'tensorflow-datasets>=4.9.6,<4.10',
        'importlib_resources',
        'ml-collections>=0.1.1,<1.2',
        'clu>=0.0.12,<0.1',
        'numpy>=1.26',
    ],
    extras_require={
        'viz': ['matplotlib>=3.6,<4', 'scikit-learn>=1.3'],
        'notebooks': ['matplotlib>=3.6,<4', 'scikit-learn>=1.3', 'jupyter', 'jupytext>=1.16,<2'],
        'test': ['pytest>=8', 'pytest-xdist>=3', 'scikit-image>=0.22', 'scikit-learn>=1.3', 'Pillow>=10', 'matplotlib>=3.6,<4',
                 'jupytext>=1.16,<2', 'nbformat>=5.9,<6', 'nbclient>=0.10,<0.12', 'ipykernel>=6.29,<8'],
    },
)
