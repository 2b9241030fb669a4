"""Plumbing every layer shares: errors, the one atomic write, checked readers, provenance, paths, CLI.

The lowest layer of the workbench (`common <- trees <- medusa <- bench <- analysis`): it imports
nothing of the project, so any module may use it. See README "Architecture".
"""
