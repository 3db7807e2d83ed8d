"""The peer's discovery service, asked for one thing: which organisations of a channel have
no live peer running a chaincode. The gateway client asks it only to name the organisations
behind an endorsement that failed for want of reachable peers (errors.EndorsementUnavailable),
when the gateway's own answer does not name them.

    orgs = await orgs_without_endorsers(stub, identity, signer, "streamledger", signed_proposal)

It never raises: when discovery cannot answer, no organisation is named.
"""

from __future__ import annotations

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.discovery import protocol_pb2, protocol_pb2_grpc
from fabric_protos.peer import proposal_pb2, proposal_response_pb2

from streamledger.fabric.identity import Identity, Signer


def chaincode_of(signed: proposal_pb2.SignedProposal) -> str:
    """The name of the chaincode a signed proposal calls."""
    header = common_pb2.Header.FromString(proposal_pb2.Proposal.FromString(signed.proposal_bytes).header)
    channel_header = common_pb2.ChannelHeader.FromString(header.channel_header)
    return proposal_pb2.ChaincodeHeaderExtension.FromString(channel_header.extension).chaincode_id.name


def discovery_request(identity: Identity, signer: Signer, channel: str, chaincode: str) -> protocol_pb2.SignedRequest:
    """Two queries: the channel's config (its MSPs, the orderers' among them) and its live
    peers that run `chaincode`, by MSP."""
    interest = proposal_response_pb2.ChaincodeInterest(chaincodes=[proposal_response_pb2.ChaincodeCall(name=chaincode)])
    request = protocol_pb2.Request(
        authentication=protocol_pb2.AuthInfo(client_identity=identity.serialized()),
        queries=[protocol_pb2.Query(channel=channel, config_query=protocol_pb2.ConfigQuery()),
                 protocol_pb2.Query(channel=channel, peer_query=protocol_pb2.PeerMembershipQuery(filter=interest))])
    payload = request.SerializeToString()
    return protocol_pb2.SignedRequest(payload=payload, signature=signer.sign(payload))


def orgs_without_peers(response: protocol_pb2.Response) -> tuple[str, ...]:
    """The peer organisations of the config with no live peer in the membership, sorted; ()
    when either query failed."""
    if len(response.results) != 2 or any(r.HasField("error") for r in response.results):
        return ()
    config, members = response.results[0].config_result, response.results[1].members
    peer_orgs = set(config.msps) - set(config.orderers)
    return tuple(sorted(org for org in peer_orgs
                        if org not in members.peers_by_org or not members.peers_by_org[org].peers))


async def orgs_without_endorsers(stub: protocol_pb2_grpc.DiscoveryStub, identity: Identity, signer: Signer,
                                 channel: str, signed: proposal_pb2.SignedProposal,
                                 timeout: float = 5.0) -> tuple[str, ...]:
    """The organisations of `channel` that have no live peer running the proposal's chaincode,
    as the gateway peer's discovery service sees them; () if it cannot tell."""
    try:
        response = await stub.Discover(discovery_request(identity, signer, channel, chaincode_of(signed)),
                                       timeout=timeout)
    except grpc.aio.AioRpcError:
        return ()
    return orgs_without_peers(response)
