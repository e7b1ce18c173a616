"""Text data: the attribute-pole corpora anchors train on, and the text features data and scorers share.

sources.py downloads and parses the built-in attributes' text; matching.py matches two poles on confounds;
corpora.py splits and writes a corpora folder (config.py: your own poles); text_io.py reads and writes texts (local
or S3) for training, corpora, prompts and held-out text; features.py holds the text features (reading grade, VADER
tone); errors.py the errors; commands.py is `lerpray data`. No torch or Ray here.
"""
