"""pydiffgen.analysis"""
