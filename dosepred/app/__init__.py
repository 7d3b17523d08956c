"""The clinician-facing Streamlit viewer: a thin face over library functions. Nothing imports app."""
