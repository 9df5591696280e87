"""The AIDE paper's three settings on real data: a catalogue, their data, the driver and the results page.

``settings/<name>.yaml`` describes a setting once (data recipe, arms and their
training configs, the tests of the results page); the modules read it:

    catalogue.py  loads and checks the catalogue into frozen dataclasses
    prepare.py    the data recipes: manifests, label noise, pseudo-labels, shards
    recipe_types.py  what a recipe gets and makes, and the recipe as the registry holds it
    pipeline.py   every arm and seed through train -> predict -> evaluate (-> figures)
    stages.py     one stage: an ``aide-ray`` command as a subprocess, its log and wall time
    layout.py     the file names of an experiment folder
    results.py    the numbers of finished folders (pooled tables, paired tests, wall times)
    report.py     the Markdown of docs/results.md

``jobs/experiments/run.py`` is the command line. Import the modules themselves;
this package imports nothing, so that reading the catalogue stays cheap.
"""
