"""The agent side: the DSPy program, its tools, and the language models it calls.

- ``fleet_agent``   ``FleetAgent``, a ReAct loop over the session's documents
- ``doc_tools``     the tools: list, read a slice of, and search the session's documents
- ``turn_events``   the DSPy callback that streams the agent's steps as events
- ``turn_program``  ``execute_turn``: one turn, inside ``dspy.context`` and its trace
- ``lm``            choosing the planner LM (scripted, configured or embedded)
- ``scripted_lm``   the rule-replaying LM for tests
- ``local_model``   the embedded llama.cpp server with SmolLM2-135M
"""
