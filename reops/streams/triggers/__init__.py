"""Triggers: endless Streams of typed events that start flows, one module per source.

    from reops import on, vm_started, every, then, exec_
    on(vm_started("typed:redis")) | then(exec_, "uptime")         # libvirt, via the hub
    on(every("30s"), hosts=web) | then(exec_, "uptime")           # clock / cron
    on(file_changed("site/"), hosts=web) | then(sync, "site/", "/srv/site/")

Sources: `clock` (every, cron), `files` (file_changed), `hypervisor` (vm_started, …),
`agents` (agent_registered / lost / back), `jobs` (job_failed / succeeded), `metrics`
(threshold). Each emits `TriggerEvent`s (`event`); `on` turns them into Results for the
hosts they concern so the usual steps run on them.

Nothing is imported here: `from reops import …` loads only the module it needs (files
need watchfiles, hub triggers pyzmq), so `import reops` stays fast.
"""
