"""The servicer's registration: every RPC of the proto service has a raw-bytes handler."""

from __future__ import annotations

from google.protobuf import message_factory

from imagesvc.server.servicer import SERVICE_NAME, ImageServiceServicer
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb


def test_every_rpc_in_the_proto_has_a_handler_taking_raw_bytes():
    service = pb.DESCRIPTOR.services_by_name["ImageService"]
    assert SERVICE_NAME == service.full_name == "imagesvc.v1.ImageService"  # the wire name
    handlers = ImageServiceServicer(engine=None, settings=Settings()).method_handlers()
    assert set(handlers) == {method.name for method in service.methods}
    for method in service.methods:
        handler = handlers[method.name]
        assert handler.unary_unary is not None
        assert handler.request_deserializer is None  # decoded by server.wire instead
        reply = message_factory.GetMessageClass(method.output_type)()
        assert handler.response_serializer(reply) == reply.SerializeToString()
