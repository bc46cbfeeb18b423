"""Model architectures: the typed config the kernel runs by (config.py), and one
module per family (llama.py, ...) mapping each file format's hyper-parameters
and tensor names onto it; registry.py picks the family of a model's files."""
