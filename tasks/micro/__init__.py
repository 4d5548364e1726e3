"""The micro tier: Fashion-MNIST based data and small models that run offline on a CPU."""
