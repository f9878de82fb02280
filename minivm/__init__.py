"""minivm"""
