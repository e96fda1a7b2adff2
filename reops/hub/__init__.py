"""The hub (`reops hub`): the controller daemon agents connect to, like a Salt master.

It owns what outlives one command: agent connections and their keys, in-flight calls,
schedules and registry events, and a local control socket through which the CLI, the REPL,
flows and other services (the machines job queue) reach it. Other services plug in with
`Controller.register(name, handler)` and `Controller.publish(topic, data)`.
"""
