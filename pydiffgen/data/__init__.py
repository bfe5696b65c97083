"""pydiffgen.data"""
