//! Argon2id over caller-owned block memory: a hashing thread keeps its
//! blocks between hashes instead of allocating (and page-faulting) a fresh
//! `memory_kib` buffer each time, which also keeps the allocator from
//! holding on to freed buffers. On Linux that memory asks for transparent
//! huge pages: Argon2 reads blocks at random across all of it, and with
//! 4 KiB pages most of those reads also miss the TLB.

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};
use rand::{TryRngCore, rngs::OsRng};
use subtle::ConstantTimeEq;

use super::hashing::HashError;

const SALT_LEN: usize = 16;

/// One hashing thread's Argon2 memory, allocated on first use and kept.
pub struct BlockMemory {
    blocks: Vec<Block>,
    /// Blocks the current parameters need; larger (older) parameters get a
    /// temporary buffer so this one never grows past the configured size.
    kept: usize,
}

impl BlockMemory {
    pub fn for_params(params: &Params) -> Self {
        Self {
            blocks: Vec::new(),
            kept: params.block_count(),
        }
    }

    fn with<R>(&mut self, needed: usize, work: impl FnOnce(&mut [Block]) -> R) -> R {
        if needed > self.kept {
            return work(&mut vec![Block::default(); needed]);
        }
        if self.blocks.len() < self.kept {
            self.blocks = huge_page_blocks(self.kept);
        }
        work(&mut self.blocks[..needed])
    }

    /// Runs `work` over all the blocks the parameters need.
    pub fn with_blocks<R>(&mut self, work: impl FnOnce(&mut [Block]) -> R) -> R {
        self.with(self.kept, work)
    }
}

/// `count` zeroed blocks, advised into huge pages before they are first
/// touched, so the kernel can back them with 2 MiB pages (in its `always`
/// or `madvise` mode; otherwise they stay 4 KiB pages).
fn huge_page_blocks(count: usize) -> Vec<Block> {
    let mut blocks = Vec::with_capacity(count);
    advise_huge_pages(&mut blocks);
    blocks.resize(count, Block::default());
    blocks
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(blocks: &mut Vec<Block>) {
    let page = rustix::param::page_size();
    let start = blocks.as_mut_ptr().cast::<u8>();
    let bytes = blocks.capacity() * size_of::<Block>();
    // madvise takes whole pages: the pages wholly inside the allocation.
    let skip = start.align_offset(page);
    let len = bytes.saturating_sub(skip) / page * page;
    if len == 0 {
        return;
    }
    // SAFETY: the range lies within the vector's own allocation, which
    // nothing else references yet; MADV_HUGEPAGE changes only how the
    // kernel backs those pages, never what they hold.
    let advised = unsafe {
        rustix::mm::madvise(
            start.wrapping_add(skip).cast(),
            len,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
    if let Err(error) = advised {
        tracing::debug!(%error, "hashing memory stays in small pages");
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_blocks: &mut Vec<Block>) {}

/// Hashes `password` with a fresh salt into a PHC string.
pub fn hash(
    argon: &Argon2<'_>,
    password: &[u8],
    memory: &mut BlockMemory,
) -> Result<String, HashError> {
    let salt = random_bytes::<SALT_LEN>()?;
    let params = argon.params();
    let mut output = vec![0u8; output_len(params)];
    memory
        .with(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, &salt, &mut output, blocks)
        })
        .map_err(|error| HashError::Argon2(error.into()))?;
    phc_string(argon, &salt, &output)
}

/// Whether `password` hashes to `stored`, under the stored parameters.
/// The outputs are compared in constant time.
pub fn verify(
    stored: &PasswordHash<'_>,
    password: &[u8],
    memory: &mut BlockMemory,
) -> Result<bool, HashError> {
    let argon = argon_for(stored)?;
    let salt = stored.salt.ok_or(HashError::Argon2(
        argon2::password_hash::Error::SaltInvalid(
            argon2::password_hash::errors::InvalidValue::Malformed,
        ),
    ))?;
    let mut salt_buffer = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_buffer)
        .map_err(HashError::Argon2)?;
    let expected = stored
        .hash
        .ok_or(HashError::Argon2(argon2::password_hash::Error::Password))?;
    let mut output = vec![0u8; expected.len()];
    memory
        .with(argon.params().block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, salt, &mut output, blocks)
        })
        .map_err(|error| HashError::Argon2(error.into()))?;
    Ok(bool::from(expected.as_bytes().ct_eq(&output)))
}

/// A PHC string under the current parameters that no password matches
/// (its output is random), so checking it costs what a real check costs.
pub fn unmatchable(argon: &Argon2<'_>) -> Result<String, HashError> {
    let salt = random_bytes::<SALT_LEN>()?;
    let mut output = vec![0u8; output_len(argon.params())];
    OsRng.try_fill_bytes(&mut output).map_err(HashError::Salt)?;
    phc_string(argon, &salt, &output)
}

/// Whether `hash` was made with `argon`'s algorithm, version and costs.
pub fn uses_params(argon: &Argon2<'_>, hash: &PasswordHash<'_>) -> bool {
    let current = argon.params();
    hash.algorithm == Algorithm::Argon2id.ident()
        && hash.version == Some(Version::V0x13.into())
        && Params::try_from(hash).is_ok_and(|p| {
            p.m_cost() == current.m_cost()
                && p.t_cost() == current.t_cost()
                && p.p_cost() == current.p_cost()
        })
}

fn argon_for(stored: &PasswordHash<'_>) -> Result<Argon2<'static>, HashError> {
    let algorithm = Algorithm::try_from(stored.algorithm).map_err(HashError::Argon2)?;
    let version = stored
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|error| HashError::Argon2(error.into()))?
        .unwrap_or_default();
    let params = Params::try_from(stored).map_err(HashError::Argon2)?;
    Ok(Argon2::new(algorithm, version, params))
}

fn output_len(params: &Params) -> usize {
    params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
}

fn phc_string(argon: &Argon2<'_>, salt: &[u8], output: &[u8]) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(salt).map_err(HashError::Argon2)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(HashError::Argon2)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(output).map_err(HashError::Argon2)?),
    };
    Ok(hash.to_string())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], HashError> {
    let mut bytes = [0u8; N];
    OsRng.try_fill_bytes(&mut bytes).map_err(HashError::Salt)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use argon2::PasswordHasher as _;

    use super::*;

    fn argon(memory_kib: u32) -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(memory_kib, 1, 1, None).unwrap(),
        )
    }

    #[test]
    fn agrees_with_the_allocating_implementation() {
        let argon = argon(1024);
        let mut memory = BlockMemory::for_params(argon.params());
        let ours = hash(&argon, b"correct horse battery", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        argon2::PasswordVerifier::verify_password(&argon, b"correct horse battery", &parsed)
            .unwrap();

        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let theirs = argon
            .hash_password(b"correct horse battery", &salt)
            .unwrap();
        assert!(verify(&theirs, b"correct horse battery", &mut memory).unwrap());
        assert!(!verify(&theirs, b"correct horse batterz", &mut memory).unwrap());
    }

    #[test]
    fn older_larger_parameters_use_a_temporary_buffer() {
        let old = argon(2048);
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let stored = old.hash_password(b"correct horse battery", &salt).unwrap();
        let mut memory = BlockMemory::for_params(argon(1024).params());
        assert!(verify(&stored, b"correct horse battery", &mut memory).unwrap());
        assert_eq!(memory.blocks.len(), 0, "the kept buffer did not grow");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kept_blocks_are_advised_into_huge_pages() {
        let mut memory = BlockMemory::for_params(argon(8192).params());
        let middle = memory.with_blocks(|blocks| blocks[blocks.len() / 2..].as_ptr() as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((from, to)) = range.split_once('-')
                && let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                )
            {
                in_region = (from..to).contains(&middle);
            } else if in_region && let Some(vm_flags) = line.strip_prefix("VmFlags:") {
                flags = Some(
                    vm_flags
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                );
            }
        }
        let flags = flags.expect("the blocks' mapping is in smaps");
        assert!(flags.iter().any(|f| f == "hg"), "VmFlags {flags:?}");
    }

    #[test]
    fn the_unmatchable_hash_costs_a_check_and_never_matches() {
        let argon = argon(1024);
        let dummy = unmatchable(&argon).unwrap();
        let parsed = PasswordHash::new(&dummy).unwrap();
        assert!(uses_params(&argon, &parsed));
        let mut memory = BlockMemory::for_params(argon.params());
        assert!(!verify(&parsed, b"", &mut memory).unwrap());
        assert_eq!(memory.blocks.len(), 1024);
    }
}
