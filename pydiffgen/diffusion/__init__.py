"""pydiffgen.diffusion"""
