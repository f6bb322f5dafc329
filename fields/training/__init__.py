"""Training: the one loop (``trainer``) and what a step works on (``steps``: ray batches, whole images,
pixels of one image; ``distill``: a teacher run), plus seeding Gaussians from a trained field and 2-D image fits."""
