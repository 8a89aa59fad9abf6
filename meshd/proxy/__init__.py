"""The data path: app connections in, streams over sidecar links, app connections out.

``outbound`` takes the host's intercepted connections and sends each as a
stream over a ``link`` to the destination's meshd, at the endpoint the
``balancer`` picks, the ``pool`` dialling the links; ``inbound`` accepts links
on the mesh port and delivers their streams to local apps (and plaintext
from outside the mesh, in permissive mode). ``frames`` is the link's wire
format, ``stream`` one relayed connection with its flow control, ``http``
the HTTP/1.1 exchange on a connection that needs L7 (observe, hold, rewrite,
answer). Who may connect where is not decided here: both directions ask
``meshd.policy`` at their admission point.
"""
