"""pydiffgen.report"""
