"""The config: one TOML file, validated completely before anything is written. The schema,
one frozen dataclass per table with each key's default and rules (``schema``), reading a
file with the command line's overrides (``load``), the typed reading of TOML values and
the one-line errors naming file, key, value and expected form (``toml``), and the object
list, inline or from a file (``objects``). Pure; it imports only ``core`` (the seed
arithmetic's limits).
"""
