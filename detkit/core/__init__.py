"""The foundation every layer may import (files, logging, versions, YAML, the deploy record,
contracts, drawing); it imports nothing else of detkit."""
