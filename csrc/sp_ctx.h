/* sp_ctx.h - placeholder */
