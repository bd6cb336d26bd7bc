"""Tools around a node: the command line, the load tester, the demo market maker and a
small client.
"""
