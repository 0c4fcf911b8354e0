"""Regions of an image: background, skin and clothes, from a person mask (the segmentation
model on Triton) and a per-image skin-colour model seeded by the detected faces."""
