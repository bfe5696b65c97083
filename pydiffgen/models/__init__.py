"""pydiffgen.models"""
