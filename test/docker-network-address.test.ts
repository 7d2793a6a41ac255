import { describe, expect, it } from 'vitest';
import { networkGatewayAddress } from '../scheduler/launchers/docker-engine.ts';

// What `docker network inspect` printed on CI's freshly started engine (Docker 20.10): the
// default bridge lists its Subnet but no Gateway, and docker0 is down until a container
// starts. The LLM gateway's listen address and the bridge tests both come from here.
describe('networkGatewayAddress', () => {
  it('takes the Gateway the engine lists', () => {
    const network = {
      Driver: 'bridge',
      IPAM: { Config: [{ Subnet: '10.9.0.0/16', Gateway: '10.9.0.254' }] },
    };
    expect(networkGatewayAddress(network)).toBe('10.9.0.254');
  });

  it("falls back to the subnet's first address when a fresh engine lists only the subnet", () => {
    const fresh = {
      Driver: 'bridge',
      IPAM: { Config: [{ Subnet: '172.17.0.0/16' }] },
      Options: { 'com.docker.network.bridge.name': 'hd-no-such-interface' },
    };
    expect(networkGatewayAddress(fresh)).toBe('172.17.0.1');
    expect(
      networkGatewayAddress({ ...fresh, IPAM: { Config: [{ Subnet: '10.1.2.128/25' }] } }),
    ).toBe('10.1.2.129');
  });

  it('has no address for a network that is not a bridge, or an IPv6-only one', () => {
    expect(networkGatewayAddress({ Driver: 'host', IPAM: { Config: [] } })).toBeUndefined();
    expect(
      networkGatewayAddress({
        Driver: 'bridge',
        IPAM: { Config: [{ Subnet: 'fd00::/64', Gateway: 'fd00::1' }] },
      }),
    ).toBeUndefined();
  });
});
