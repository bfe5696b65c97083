"""pydiffgen.metrics"""
