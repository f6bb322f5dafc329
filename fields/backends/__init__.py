"""Field backends behind one interface (``base.Field``): hash grid, NeRF MLP, Gaussian RBF network,
CAM-modulated MLP and 3-D Gaussians, with their encodings; ``registry`` picks one by name."""
