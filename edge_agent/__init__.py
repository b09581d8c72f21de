"""The FarmEye edge agent: the program on a coop camera.

It photographs the coop floor on a schedule (:mod:`edge_agent.schedule`),
keeps each photo in a durable spool (:mod:`edge_agent.spool`) until the hub
has acknowledged it (:mod:`edge_agent.uploader`), reports its health
(:mod:`edge_agent.health`) and shows the coop's latest verdict
(:mod:`edge_agent.display`). :mod:`edge_agent.agent` wires them together;
``farmeye agent --config FILE`` runs it.

It needs only the ``agent`` extra: no TensorFlow, Celery or psycopg2.
"""
