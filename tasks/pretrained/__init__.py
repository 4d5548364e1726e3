"""The pretrained tier: real large-scale-pretrained backbones that install offline."""
