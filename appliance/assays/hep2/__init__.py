"""HEp-2 indirect immunofluorescence (ANA): cell patterns, specimen pattern(s), intensity."""
