"""The foundation every other layer may import: atomic file writing and run folders (``io``),
logging, versions, YAML, the deploy record, the model/split contracts and drawing. Imports
nothing else of detkit."""
