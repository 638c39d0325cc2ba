"""Tool calling: the tools a request declares (`plan`), how the prompt shows them (`prompt`), the
grammar a forced call is decoded under (`grammar`), and the calls read back from the text (`parser`).
"""
