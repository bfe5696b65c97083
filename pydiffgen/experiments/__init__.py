"""pydiffgen.experiments"""
