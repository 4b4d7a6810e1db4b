"""The Gradio web app: app.py (the server), page.py (the page and its events), handlers.py (what the widgets call),
words.py (what the page says), inputs.py (checking what callers send), hosting.py (serving the public) and shelf.py
(the model dropdown). A surface: it imports the engine and models.
"""
