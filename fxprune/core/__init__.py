"""The pass alone: prepare, finalize, the handler registry, and what flows between them.

    prepare/     capture, propagate, group, find branches, insert masks and gates
    finalize/    decide, remove branches, fold, slice, resize, in place, verify
    rules/       one handler per op or layer kind, one public registry
    ir.py        the types that flow between stages, and the state a prepared model carries
    atoms.py     channel atoms and the union-find that ties them
    masks.py     the mask and gate modules
    channel_cost.py   estimated MACs per channel, for the methods that rank by cost
    weight_slices.py  a read-only view of the weights tied to each channel, for the methods

Nothing here imports from the methods, training, reports, export, the CLI or the demo.
"""
