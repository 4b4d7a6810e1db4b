"""The Gradio web app: app.py (layout and the adapter to the library), inputs.py (checking what callers send),
hosting.py (serving the public) and shelf.py (the model dropdown). A surface: it imports the engine and models.
"""
