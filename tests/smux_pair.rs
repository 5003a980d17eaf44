//! A client Mux and a server Mux wired back to back through a pipe that re-chunks bytes at
//! random: many concurrent streams move random data both ways, half-close in random order, and
//! everything must arrive exactly once, in order, with both sides forgetting every stream.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_plugin::smux::{Mux, MuxConfig, MuxEvent, Role, StreamId};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

const STREAMS: usize = 50;

/// One direction of one stream: what must be sent, how much is, what arrived.
#[derive(Default)]
struct Flow {
    data: Vec<u8>,
    sent: usize,
    fin_sent: bool,
    received: Vec<u8>,
    fin_received: bool,
}

/// One endpoint with the flows it sends (`out`) and receives (`inn`) per stream id.
struct Side {
    mux: Mux,
    out: HashMap<StreamId, Flow>,
    inn: HashMap<StreamId, Flow>,
    closed: Vec<StreamId>,
}

/// A byte pipe that delivers in random pieces (cut at random points, not at frame boundaries).
#[derive(Default)]
struct Pipe {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Pipe {
    fn pull_from(&mut self, m: &mut Mux) {
        while let Some(b) = m.poll_output() {
            self.len += b.len();
            self.queue.push_back(b);
        }
    }

    fn deliver(&mut self, rng: &mut StdRng, to: &mut Side) {
        let mut n = rng.random_range(0..=self.len.min(70_000));
        self.len -= n;
        while n > 0 {
            let front = self.queue.front_mut().expect("len counts queued bytes");
            let piece = front.split_to(n.min(front.len()));
            if front.is_empty() {
                self.queue.pop_front();
            }
            n -= piece.len();
            to.mux
                .handle_input(Instant::now(), &piece)
                .expect("a valid peer's bytes decode");
        }
    }
}

fn drain_events(side: &mut Side, peer_data: &mut dyn FnMut(StreamId) -> Vec<u8>) {
    while let Some(ev) = side.mux.poll_event() {
        match ev {
            MuxEvent::Opened(id) => {
                assert!(!side.out.contains_key(&id), "opened twice: {id}");
                side.out.insert(
                    id,
                    Flow {
                        data: peer_data(id),
                        ..Flow::default()
                    },
                );
                side.inn.insert(id, Flow::default());
            }
            MuxEvent::Data(id, d) => {
                let f = side.inn.get_mut(&id).expect("data for a known stream");
                assert!(!f.fin_received, "data after FIN on {id}");
                f.received.extend_from_slice(&d);
            }
            MuxEvent::Fin(id) => {
                let f = side.inn.get_mut(&id).expect("FIN for a known stream");
                assert!(!f.fin_received, "FIN twice on {id}");
                f.fin_received = true;
            }
            MuxEvent::Closed(id) => {
                assert!(side.inn[&id].fin_received && side.out[&id].fin_sent);
                assert!(!side.closed.contains(&id));
                side.closed.push(id);
            }
            MuxEvent::KeepAliveTimeout => panic!("keep-alive is off"),
        }
    }
}

/// Writes a random piece of one random unfinished flow, or closes it once all is written.
fn step_writes(rng: &mut StdRng, side: &mut Side) {
    let open: Vec<StreamId> = side
        .out
        .iter()
        .filter(|(_, f)| !f.fin_sent)
        .map(|(id, _)| *id)
        .collect();
    if open.is_empty() {
        return;
    }
    let id = open[rng.random_range(0..open.len())];
    let f = side.out.get_mut(&id).unwrap();
    if f.sent == f.data.len() {
        side.mux.close_write(id).unwrap();
        f.fin_sent = true;
    } else {
        let n = rng.random_range(1..=(f.data.len() - f.sent).min(80_000));
        side.mux.write(id, &f.data[f.sent..f.sent + n]).unwrap();
        f.sent += n;
    }
}

fn random_data(rng: &mut StdRng) -> Vec<u8> {
    // Some empty flows, so a FIN may be the first thing on a stream.
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(1..100),
        _ => rng.random_range(100..120_000),
    };
    // xorshift from a random seed: cheap in debug builds, still distinct per stream and direction.
    let mut x: u64 = rng.random::<u64>() | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Instant::now();
    let mut client = Side {
        mux: Mux::new(MuxConfig::new(Role::Client, None), now),
        out: HashMap::new(),
        inn: HashMap::new(),
        closed: Vec::new(),
    };
    let mut server = Side {
        mux: Mux::new(MuxConfig::new(Role::Server, None), now),
        out: HashMap::new(),
        inn: HashMap::new(),
        closed: Vec::new(),
    };
    // What the server will send on each stream, decided up front so it can be checked.
    let mut server_data: HashMap<StreamId, Vec<u8>> = HashMap::new();
    for _ in 0..STREAMS {
        let id = client.mux.open_stream().unwrap();
        client.out.insert(
            id,
            Flow {
                data: random_data(&mut rng),
                ..Flow::default()
            },
        );
        client.inn.insert(id, Flow::default());
        server_data.insert(id, random_data(&mut rng));
    }
    let expected_s2c = server_data.clone();

    let mut c2s = Pipe::default();
    let mut s2c = Pipe::default();
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no progress");
        match rng.random_range(0..4) {
            0 => step_writes(&mut rng, &mut client),
            1 => step_writes(&mut rng, &mut server),
            2 => c2s.deliver(&mut rng, &mut server),
            _ => s2c.deliver(&mut rng, &mut client),
        }
        c2s.pull_from(&mut client.mux);
        s2c.pull_from(&mut server.mux);
        drain_events(&mut client, &mut |id| panic!("client got SYN {id}"));
        drain_events(&mut server, &mut |id| {
            server_data
                .remove(&id)
                .expect("server data for a client id")
        });
        if client.closed.len() == STREAMS
            && server.closed.len() == STREAMS
            && c2s.len == 0
            && s2c.len == 0
        {
            break;
        }
    }

    for (id, f) in &client.out {
        assert_eq!(
            server.inn[id].received, f.data,
            "seed {seed}: client->server stream {id}"
        );
    }
    for (id, data) in &expected_s2c {
        assert_eq!(
            &client.inn[id].received, data,
            "seed {seed}: server->client stream {id}"
        );
    }
    assert_eq!(client.mux.stream_count(), 0);
    assert_eq!(server.mux.stream_count(), 0);
    assert!(client.mux.poll_output().is_none() && server.mux.poll_output().is_none());
}

#[test]
fn fifty_streams_both_ways_with_half_closes() {
    for seed in 0..4 {
        run(seed);
    }
}
