/* sp_digest.h - placeholder */
