"""The HMI's screens: one view per tab, plus dialogs and help."""
