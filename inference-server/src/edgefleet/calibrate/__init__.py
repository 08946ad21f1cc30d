"""Calibrate the router's complexity classifier on the user's own local model and prompts.

`edgefleet calibrate --policy FILE --prompts FILE` asks the local models and the cloud,
grades the answers, trains the classifier on those labels and writes a versioned artefact
plus a report (docs/routing-quality.md, "Calibrating on your own model"). Importing this
package imports nothing heavy: Ray and scikit-learn are loaded by the modules that use them.
"""
